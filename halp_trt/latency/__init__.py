"""Latency tables: per-layer graphs (``graphs``), step detection (``steps``), the table and its
lookup (``table``), its identity (``identity``), building (``build``), finding one for a model
(``resolve``), inspection (``inspection``) and the calibration from layer sums to whole-model
latency (``calibration``). Timing itself is the runtime layer's (``halp_trt.runtime``)."""
