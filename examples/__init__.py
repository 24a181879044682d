"""Examples from the README (each one is exercised by the test suite)."""
