"""The one event array format of the codebase: a numpy structured array with x, y (uint16 pixels), t (int64 µs) and
p (uint8, 1 = ON / positive, 0 = OFF). The simulator writes it, the DSEC reader converts to it, the event files store
it and every representation reads it."""

import numpy as np

EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])
