"""The pipeline's stages, each a small module with a function from typed inputs to a typed record, cached in
``data.store.KeyedStore`` under a content key of its inputs:

* ``fuse``: a candidate's fused images for the splits in use (content-keyed folder, resumable);
* ``score``: the fusion metrics and the temporal metrics of the evaluation split, one record;
* ``detect``: the detector recipe, the YOLO export and one job per detector seed (run by ``pipelines.executors``);
* ``late``: late fusion's seeds, the single-modality detectors' boxes merged (nothing trained);
* ``robustness``: the kept detectors scored again on corrupted inputs;
* ``sudden``: each fuser around a sudden change of visibility (``--sudden-change``);
* ``outputs``: results.json/csv/md, plots and TensorBoard (the tables themselves are ``pipelines.report``).

The records they hand on beyond their own module (a detector seed, a candidate's row, the bootstrap and robustness
sections) and the results document itself are ``pipelines/records.py``'s dataclasses, each stored as JSON by its
``to_dict`` and read back by its ``from_dict``. ``pipelines.engine`` only orders the stages, hands independent work
to an executor and assembles the results. A new stage is one module here plus its call in the engine.
"""
