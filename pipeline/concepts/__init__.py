"""Concepts, the visual parts that identify each class: the catalog file and its reader, concepts
proposed by an LLM through litellm, and the filters that drop context and class-name concepts."""
