"""What fine-tuning changed inside a model: attention statistics, representation similarity (CKA), logit lens,
sparsity and a sparse autoencoder.

The metric modules here (`attention`, `similarity`, `sparsity`, `sae`) are pure functions of tensors the caller
has already captured; the logit lens and the model hooks that capture activations live in the other modules of
this package.
"""
