"""Migration scripts, oldest first: never edited once released, only added to."""
