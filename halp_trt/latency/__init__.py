"""Latency tables: one layer as an ONNX graph (``layer_onnx``), step detection (``steps``), the
table and its lookup (``table``), its identity (``identity``), building (``build``), checking it
fits this machine (``probe``), transferring another machine's (``transfer``), finding one for a
model (``resolve``), inspection (``inspection``) and the calibration from layer sums to
whole-model latency (``calibration``); ``synthetic`` is a MAC-count staircase for structure-only
runs, never a measurement. Timing itself is the runtime layer's (``halp_trt.runtime``)."""
