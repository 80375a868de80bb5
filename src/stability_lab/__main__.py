from stability_lab.cli import entry

entry()
