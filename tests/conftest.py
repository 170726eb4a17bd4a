import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny_models.py is importable from every test folder
torch.set_num_threads(min(2, os.cpu_count() or 1))
