"""The system model: device profiles, availability, selection, stragglers, deadlines, simulated clock."""
from edgejax.system.availability import Availability
from edgejax.system.clock import POLICIES, Payload, RoundCost, deadline_plan, node_times, round_cost
from edgejax.system.model import SELECTIONS, STRAGGLERS, SystemModel, SystemState
from edgejax.system.profiles import (DeviceProfiles, lognormal_profiles, profiles_from_arrays, profiles_from_csv,
                                     profiles_to_csv, tiered_profiles, uniform_profiles)
from edgejax.system.selection import select_deadline_greedy, select_tier, select_uniform

__all__ = ["Availability", "DeviceProfiles", "POLICIES", "Payload", "RoundCost", "SELECTIONS", "STRAGGLERS",
           "SystemModel", "SystemState", "deadline_plan", "lognormal_profiles", "node_times", "profiles_from_arrays",
           "profiles_from_csv", "profiles_to_csv", "round_cost", "select_deadline_greedy", "select_tier",
           "select_uniform", "tiered_profiles", "uniform_profiles"]
