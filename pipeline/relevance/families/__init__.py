"""One module per model family, each exporting ``FAMILY`` (:class:`pipeline.relevance.rules.ModelFamily`):
its rule map, its affine modules and its model-level check. :mod:`pipeline.relevance.attnlrp`
finds every module here, so a new family is one new file."""
