"""Concept masks: the zarr mask store, the backends that fill it (``annotated``: the data's own
part masks, optionally degraded like Grounded-SAM's; ``grounded_sam``: GroundingDINO boxes then
SAM masks), and the choice between them."""
