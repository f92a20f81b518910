import sys
from pathlib import Path

# Test helpers (fake_nvml, helpers) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
