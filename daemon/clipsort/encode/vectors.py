"""The vector type every stage passes around: L2-normalised float32 rows, one per picture or text.

NumPy only, so that the classification maths and the store can name it
without importing the model stack (torch, transformers).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
