"""Data files shipped with the package (NIST StRD problems)."""
