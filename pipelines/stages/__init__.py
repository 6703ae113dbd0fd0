"""The pipeline's stages, each a small module with a function from typed inputs to a typed record, cached in
``data.store.KeyedStore`` under a content key of its inputs:

* ``fuse``: a candidate's fused images for the splits in use (content-keyed folder, resumable);
* ``score``: the fusion metrics and the temporal metrics of the evaluation split, one record;
* ``detect``: the detector recipe, the YOLO export and one job per detector seed (run by ``pipelines.executors``);
* ``robustness``: the kept detectors scored again on corrupted inputs;
* ``outputs``: results.json/csv/md, plots and TensorBoard (the tables themselves are ``pipelines.report``).

``pipelines.engine`` only orders them, hands independent work to an executor and assembles the results.
A new stage is one module here plus its call in the engine.
"""
