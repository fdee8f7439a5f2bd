"""What the model is, as far as pruning cares: its prunable layers with the signature each is
timed under (``layers``) and the coupled channel groups that must be pruned together, from
torch-pruning's dependency graph (``groups``)."""
