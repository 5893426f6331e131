"""Set-up workarounds that are not part of the cft library (see ``torchvision_fallback``)."""
