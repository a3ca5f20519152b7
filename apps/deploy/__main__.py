"""Entry point: `python apps/deploy -i <input> -o <output> -m <model.ts | bundle folder>` (SDK app layout)."""

import logging
import sys

from app import MGCCUltrasoundSegApp
from errors import InputError

if __name__ == "__main__":
    app = MGCCUltrasoundSegApp()
    try:
        app.run()
    except InputError as ex:  # refused input or model: one clear line, non-zero exit
        if app.manifest is not None:
            app.manifest.finish("failed", str(ex))
        logging.getLogger("mgcc_deploy").error("%s", ex)
        print(f"error: {ex}", file=sys.stderr)
        sys.exit(2)
    except BaseException as ex:  # the run stopped midway: predictions.json says so
        if app.manifest is not None:
            app.manifest.finish("failed", f"{type(ex).__name__}: {ex}")
        raise
    if app.manifest is not None:
        missing = app.expected is not None and app.manifest.results < app.expected
        done = app.manifest.results > 0 and not missing
        app.manifest.finish(
            "complete" if done else "failed",
            None if done else f"{app.manifest.results} of {app.expected or 'the'} inputs segmented",
        )
        if not done:
            print(
                f"error: the run failed: {app.manifest.results} of {app.expected or 'the'} inputs segmented; "
                f"see {app.manifest.path}",
                file=sys.stderr,
            )
            sys.exit(1)
