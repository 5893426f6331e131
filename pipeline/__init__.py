"""cft library: everything the stage commands call. Modules are small and have one job each."""
