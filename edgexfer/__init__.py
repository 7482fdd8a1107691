"""edgexfer: take a pretrained vision model to an edge device with proof that it still works.

finetune -> export -> quantize -> build -> verify -> bench, each stage reading and extending one run
directory whose ``manifest.json`` is the contract between stages.
"""

__version__ = "0.1.0"
