"""Planning a scheduled run's mapped recommend tasks: within Airflow's mapping limit at 100,000 users."""

import math

import pytest

from pipeline.recommend.options import validate_options
from pipeline.recommend.users import batch_size, plan_requests
from pipeline.settings import get_settings


class ListingStore:
    """Just enough of an ObjectStore for planning: ``list(prefix)`` over fixed keys, in O(1) per user."""

    def __init__(self, users: int, photos: int = 3) -> None:
        self.by_user = {f"u{n:06d}": [f"users/u{n:06d}/p{p}.jpg" for p in range(photos)] for n in range(users)}
        self.by_user_shown = {user: f"users/{user}/_shown/2026-11-30.parquet" for user in self.by_user}

    def list(self, prefix: str) -> list[str]:
        if prefix.rstrip("/") == "users":  # a folder, with or without its slash (as ObjectStore.list takes it)
            return [key for user, keys in self.by_user.items() for key in (*keys, self.by_user_shown[user])]
        user = prefix.split("/")[1]
        return [*self.by_user.get(user, []), self.by_user_shown[user]] if user in self.by_user else []


def test_100000_users_fit_in_airflows_map_length():
    store = ListingStore(100_000)
    batches = plan_requests(store, None, None, validate_options())
    config = get_settings().recommend
    assert len(batches) <= int(config.max_mapped_tasks) <= 1024  # Airflow's default max_map_length
    assert {len(b) for b in batches[:-1]} == {max(int(config.users_per_task), math.ceil(100_000 / 1000))}
    users = [request["user_id"] for batch in batches for request in batch]
    assert users == sorted(store.by_user) and len(set(users)) == 100_000  # everyone once, in order
    assert batches[0][0]["image_keys"] == ["users/u000000/p0.jpg", "users/u000000/p1.jpg", "users/u000000/p2.jpg"]


@pytest.mark.parametrize(
    "users,expected",
    [(0, 100), (1, 100), (99_999, 100), (100_000, 100), (100_001, 101), (250_000, 250), (1_000_000, 1000)],
)
def test_batch_size_grows_only_past_the_task_limit(users, expected):
    size = batch_size(users, users_per_task=100, max_tasks=1000, max_users_per_task=1000)
    assert size == expected
    assert math.ceil(users / size) <= 1000


def test_a_customer_base_beyond_the_largest_batches_fails_the_plan_clearly():
    with pytest.raises(ValueError, match="1000001 users need 1001 users per task.*max_users_per_task"):
        batch_size(1_000_001, users_per_task=100, max_tasks=1000, max_users_per_task=1000)
    with pytest.raises(ValueError, match="users_per_task"):
        batch_size(10, users_per_task=0, max_tasks=1000, max_users_per_task=1000)


def test_the_task_limit_is_within_the_installed_airflows_max_map_length():
    from airflow.configuration import conf

    assert int(get_settings().recommend.max_mapped_tasks) <= conf.getint("core", "max_map_length")
