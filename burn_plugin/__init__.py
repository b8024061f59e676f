"""burn-plugin: BURN (Backdoor Unlearning via adversaRial bouNdary analysis) for BackdoorBench.

Layers (imports point downward only): ``cli`` -> ``backdoorbench`` | ``report`` (siblings) -> ``defend``/``defenses``
-> ``bench`` -> ``core``. ``core`` is BURN itself and depends on torch alone.
"""
__version__ = "0.1.0"
