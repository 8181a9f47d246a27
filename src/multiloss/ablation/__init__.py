"""The ablation: the paper as published beside the corrected suite, flaw by flaw, over seeds."""
