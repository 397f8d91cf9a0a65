"""The benchmark library behind ``tools/benchmark.py`` and ``tools/gpu_check.py`` (README "Performance").

Outside the importable package, beside its command lines (as Detectron2 keeps ``tools/benchmark.py`` outside
``detectron2/``): the scripts import it as ``benchmarking`` (their folder is first on ``sys.path``), the tests
through the same folder (tests/conftest.py). It uses :mod:`hrda_d2` and nothing in ``hrda_d2`` imports it. One
job per module:

* :mod:`.variants`: the measured variants (config switches against the float32 baseline), ``--tiny``, the
  config of a variant, the plan of (variant, phases);
* :mod:`.synthetic`: synthetic batches and the project's trainer on them;
* :mod:`.memory`: the memory meter (CUDA: allocated by torch; CPU: resident set size), current and peak;
* :mod:`.timing`: device synchronisation and the stage timer (a stage listener of the UDA step);
* :mod:`.flops`: FLOP counts with fvcore;
* :mod:`.ddp`: counting backward passes, gradient sync rounds and bucket all-reduces under DDP;
* :mod:`.phases`: what one (variant, phase) process measures: ``train``, ``infer``, ``fwdbwd``, ``ddp``,
  ``vfm_infer`` (:mod:`.vfm_inference`: VFM-UDA vs MIC(HRDA) inference with the same ViT), ``deploy``
  (:mod:`.deploy`: eager PyTorch vs the exported model through TorchScript and onnxruntime);
* :mod:`.runner` / :mod:`.worker`: every (variant, phase) in a fresh subprocess, so that its peak memory is its own;
* :mod:`.report`: the device description and the ratio table.
"""
