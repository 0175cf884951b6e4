"""KL-weight schedules of training (warm-up, cyclical annealing).

The schedule lives beside the objectives that apply it (:mod:`pyro_vae.infer.objectives`);
this module is where training code and users look for it.
"""

from pyro_vae.infer.objectives import WARMUPS, KLSchedule

__all__ = ["KLSchedule", "WARMUPS"]
