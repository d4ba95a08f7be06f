"""The bottom layer: what every other package needs and nothing else (docs/DESIGN.md).

Atomic writes (`fsutil`), declarative config validation (`schema`), logging set-up (`logs`), the preemption
flag (`preemption`) and restricted loading of torch / JSON / safetensors files (`safeload`). It imports no
package of this repository; importing it (or `schema`, `fsutil`, `logs`) does not import torch.
"""
