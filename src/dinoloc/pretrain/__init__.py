"""DINO pretraining from scratch.

stage.py (PretrainSpec, run_pretrain: the stage's entry point) -> data.py (which images, the loader) ->
train.py (train_dino: the loop) -> step.py (models, one iteration), schedules.py, checkpoint.py;
params.py (the recipe, no defaults: configs/pretrain/*.yaml), augment.py, head.py, loss.py.
Names are imported from the module that defines them (this file re-exports nothing, so importing a light
module such as `params` or `spec` does not import the heavy ones).
"""
