"""A run and its directory: the objects a RunConfig builds, checkpoints, restore.

Training, evaluation, export and preference building all read a run through this package
(import the submodules): `setup` (mesh, model, tokenizer of a
RunConfig), `checkpoint` (the Orbax manager of `<run_dir>/checkpoints`), `locate` (which run
directory and which step a path names: "best, else latest") and `restore` (a trained run ready
for inference).
"""
