"""Membership inference against the base model (docs/METHOD.md, "Membership inference"): one
protocol, ``fit(context)`` then ``score(images, labels)``, for rule-based, black-box,
shadow-model, LiRA and metric attacks, each over a stack of target models. `ATTACKS` is the
registry detect builds from."""

from drift_jax.membership.attack_model import AttackTrainConfig
from drift_jax.membership.base import (
                                       Attack,
                                       AttackContext,
                                       MembershipScores,
                                       Shadows,
                                       balanced_keep,
                                       train_shadows,
)
from drift_jax.membership.black_box import BlackBox, ShadowModels
from drift_jax.membership.lira import LiRA, lira_statistic, offline_scores, online_scores
from drift_jax.membership.metric import Confidence, LossThreshold, ModifiedEntropy, output_metrics
from drift_jax.membership.metrics import attack_metrics
from drift_jax.membership.rule_based import RuleBased

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (
    RuleBased, BlackBox, ShadowModels, LiRA, LossThreshold, Confidence, ModifiedEntropy)}

__all__ = ["ATTACKS", "Attack", "AttackContext", "AttackTrainConfig", "BlackBox", "Confidence",
           "LiRA", "LossThreshold", "MembershipScores", "ModifiedEntropy", "RuleBased",
           "ShadowModels", "Shadows", "attack_metrics", "balanced_keep", "lira_statistic",
           "offline_scores", "online_scores", "output_metrics", "train_shadows"]
