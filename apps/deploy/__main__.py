"""Entry point: `python apps/deploy -i <input> -o <output> -m <model.ts | bundle folder>` (SDK app layout)."""

import logging
import sys

from app import MGCCUltrasoundSegApp
from mgcc_operators import InputError

if __name__ == "__main__":
    try:
        MGCCUltrasoundSegApp().run()
    except InputError as ex:  # refused input or model: one clear line, non-zero exit
        logging.getLogger("mgcc_deploy").error("%s", ex)
        print(f"error: {ex}", file=sys.stderr)
        sys.exit(2)
