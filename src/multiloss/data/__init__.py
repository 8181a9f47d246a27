"""Data: image I/O, dataset readers, the validation split, tf.data pipelines, synthetic phantoms."""
