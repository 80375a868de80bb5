"""One module per ``stability-lab`` sub-command: parse, check, call the library."""
