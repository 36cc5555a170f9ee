"""The application over the library: what ``npgrad train``, ``evaluate``, ``export`` and
``serve`` do, as functions.

:mod:`.config` declares every training option once, :mod:`.models` the model kinds,
:mod:`.trainer` runs epochs with exact resume into :mod:`.checkpoint` files;
:mod:`.images` prepares real pictures, :mod:`.plots` draws a run, :mod:`.export` and
:mod:`.safetensors` write ONNX and safetensors files, :mod:`.serve` is the draw-a-digit
page, :mod:`.allocator` the process's malloc settings.
"""
