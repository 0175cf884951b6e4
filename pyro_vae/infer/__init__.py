"""Inference on any model/guide pair: importance sampling, objectives, AIS, gaps, diagnostics.

Nothing here knows a model class: every function takes ``(model, guide, *data)``.
"""

from pyro_vae.infer.ais import (
    ADAPT,
    AISResult,
    ais_log_likelihood,
    sigmoid_schedule,
)
from pyro_vae.infer.diagnostics import (
    KHAT_UNRELIABLE,
    khat_summary,
    posterior_inference_data,
    psis_khat,
)
from pyro_vae.infer.gaps import (
    InferenceGaps,
    inference_gaps,
    local_guide,
    optimize_local,
    vae_inference_gaps,
)
from pyro_vae.infer.importance import (
    DEFAULT_PARTICLE_BUDGET,
    LogLikelihood,
    log_likelihood,
    log_weights,
    particle_dim_of,
    site_term,
)
from pyro_vae.infer.objectives import (
    OBJECTIVES,
    WARMUPS,
    KLSchedule,
    LatentScale,
    LossValue,
    Objective,
    detach_distribution,
    dreg_loss,
    free_bits_loss,
    iwae_loss,
    make_objective,
    per_dim_kl,
)
from pyro_vae.infer.report import (
    METHODS,
    InferenceReport,
    inference_report,
)

__all__ = [
    "DEFAULT_PARTICLE_BUDGET",
    "LogLikelihood",
    "site_term",
    "particle_dim_of",
    "log_weights",
    "log_likelihood",
    "OBJECTIVES",
    "WARMUPS",
    "LossValue",
    "LatentScale",
    "KLSchedule",
    "detach_distribution",
    "iwae_loss",
    "dreg_loss",
    "per_dim_kl",
    "free_bits_loss",
    "Objective",
    "make_objective",
    "ADAPT",
    "AISResult",
    "sigmoid_schedule",
    "ais_log_likelihood",
    "InferenceGaps",
    "local_guide",
    "optimize_local",
    "inference_gaps",
    "vae_inference_gaps",
    "KHAT_UNRELIABLE",
    "psis_khat",
    "khat_summary",
    "posterior_inference_data",
    "METHODS",
    "InferenceReport",
    "inference_report",
]
