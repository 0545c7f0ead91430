"""Membership inference against the base model (METHOD.md steps 5-6): one protocol, ``fit()``
then ``score(images, labels)``, for rule-based, black-box, shadow-model and LiRA attacks."""

from drift_jax.membership.attack_model import AttackTrainConfig
from drift_jax.membership.base import MembershipAttack, MembershipScores
from drift_jax.membership.black_box import BlackBox
from drift_jax.membership.lira import LiRA, lira_statistic, offline_scores, online_scores
from drift_jax.membership.metrics import attack_metrics
from drift_jax.membership.rule_based import RuleBased
from drift_jax.membership.shadow import ShadowModels, balanced_keep

__all__ = ["AttackTrainConfig", "BlackBox", "LiRA", "MembershipAttack", "MembershipScores",
           "RuleBased", "ShadowModels", "attack_metrics", "balanced_keep", "lira_statistic",
           "offline_scores", "online_scores"]
