"""Reading a ``.keras`` file's weights in one pass.

tf_keras hands h5py the weights' zip member itself, and h5py reads it in small pieces at scattered
offsets. Python's zipfile (3.11) serves each backward seek in a member by reading it again from its
start, so loading a 40 MB U-Net spent longer reading its weights than building it. Within
:func:`weights_read_at_once` the member is read into memory once and h5py reads that: the same
variables, read from the same file.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator

import h5py
from tf_keras.src.saving import saving_lib

_PATCH = threading.RLock()     # one block at a time swaps the store class


class _WholeMemberH5Store(saving_lib.H5IOStore):
    """tf_keras' HDF5 weights store, which, reading from an archive, reads its member at once."""

    def __init__(self, root_path, archive=None, mode="r"):
        if archive is None or mode != "r":
            super().__init__(root_path, archive=archive, mode=mode)
            return
        self.root_path, self.mode, self.archive = root_path, mode, archive
        self.io_file = io.BytesIO(archive.read(root_path))
        self.h5_file = h5py.File(self.io_file, mode="r")


@contextlib.contextmanager
def weights_read_at_once() -> Iterator[None]:
    """Within this block, every ``.keras`` load (tf_keras' own, or MLflow's through it) reads its
    weights member in one read; saving is unchanged."""
    with _PATCH:
        store = saving_lib.H5IOStore
        saving_lib.H5IOStore = _WholeMemberH5Store
        try:
            yield
        finally:
            saving_lib.H5IOStore = store
