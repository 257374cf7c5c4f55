"""Type-I error of the training power preset (docs/stability_training.md, "Power"): with every
mean slope change 0, each contrast's rejection rate should be alpha = 0.05 within Monte Carlo
error. Record: validation/power_training_null.md."""

from __future__ import annotations

import time

import theralens as tl

if __name__ == "__main__":
    t0 = time.perf_counter()
    r = tl.power("training", therapists=[40], patients_per_therapist=[8], nsim=200, workers=1, progress=False,
                 seed=11, settings=["change.targeted=0", "change.untargeted=0", "change.untrained=0"])
    cols = ["test", "process", "true_value", "n_usable", "n_singular", "rejections", "power", "power_low",
            "power_high", "mean_estimate"]
    print(r.table[cols].to_markdown(index=False))
    print(f"\nfailed replicates: {len(r.failures)}; {time.perf_counter() - t0:.0f} s")
