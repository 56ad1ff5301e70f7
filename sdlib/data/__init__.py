"""Data layer: event files, the dataset layout (instruction JSON + manifest), and the DSEC reader.

Import the pieces from their modules (``sdlib.data.eventfile``, ``sdlib.data.layout``, ``sdlib.data.dsec``); the
most used names are re-exported here. h5py and hdf5plugin are imported only when a DSEC file is opened.
"""

from sdlib.data.errors import DataError
from sdlib.data.eventfile import (EVENT_DTYPE, EventWindow, events_from_dict, load_eventgpt_npy, make_events,
                                  read_events_npz, validate_events, write_events_npz)
from sdlib.data.layout import (INSTRUCTION_JSON, MANIFEST_JSON, ClipData, DatasetWriter, assign_split,
                               check_disjoint, read_instructions, read_manifest, record_paths, split_seeds,
                               verify_split)

__all__ = [
    "DataError", "EVENT_DTYPE", "EventWindow", "events_from_dict", "load_eventgpt_npy", "make_events",
    "read_events_npz", "validate_events", "write_events_npz", "INSTRUCTION_JSON", "MANIFEST_JSON", "ClipData",
    "DatasetWriter", "assign_split", "check_disjoint", "read_instructions", "read_manifest", "record_paths",
    "split_seeds", "verify_split",
]
