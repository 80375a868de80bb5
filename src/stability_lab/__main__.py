from stability_lab.cli import entry

# guarded: a process started by multiprocessing's "spawn" (playbook --jobs) imports this
# module again as __mp_main__, and must not run the command a second time
if __name__ == "__main__":
    entry()
