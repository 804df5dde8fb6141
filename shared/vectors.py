"""The one array type of an embedding: a float32 vector, L2-normalised (cosine is a dot product)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
