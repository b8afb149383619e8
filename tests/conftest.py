import os

import torch

# Two cores in CI; intra-op threads beyond that only add contention for tiny tensors.
torch.set_num_threads(min(2, os.cpu_count() or 1))
