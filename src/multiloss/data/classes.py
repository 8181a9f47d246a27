"""The three diagnostic classes, in the order every model output and one-hot target uses."""

CLASSES = ("normal", "bacterial", "viral")
