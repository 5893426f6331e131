"""cft library: everything the stage commands (``stages/``) call, grouped by role.

- ``config``: the typed, validated sections of ``params.yaml``, one module per stage.
- ``data``: the prepared dataset (manifest, array store, image folders, the fine-tuning subset,
  preprocessing, class names) and the built-in synthetic world (``data.world``).
- ``models``: building timm models, the DINOv2 classifiers, weight files, model artifacts.
- ``concepts``: the concept catalog, and concepts proposed by an LLM with their filters.
- ``masks``: the mask store and the backends that fill it (annotated, Grounded-SAM).
- ``training``: base training, fine-tuning and its objectives (relevance, RRR, labels).
- ``corruptions``: ImageNet-C's corruptions in torch and their families (training and benchmarks).
- ``relevance``: AttnLRP (per model family rules), attention rollout, relevance maps for losses.
- ``benchmarks``: evaluation sets (corrupted ones included), their protocols and the evaluation runner.
- ``analysis``: what fine-tuning changed inside a model (`cft analyze`): attention, CKA, logit lens,
  sparsity, a sparse autoencoder.
- ``reports``: metrics files, CSV plots and pictures.
- ``utils``: helpers with no domain knowledge: atomic writes, resumable state, devices, DVC inputs.
"""
