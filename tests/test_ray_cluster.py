"""grids.ray_cluster: which cluster a Ray search or grid connects to."""

from neural_alignment.grids.ray_cluster import ADDRESS_VARIABLE, init_arguments


def test_ray_address_names_the_cluster(monkeypatch):
    monkeypatch.setenv(ADDRESS_VARIABLE, "head:6379")
    assert init_arguments(num_cpus=2) == {"address": "head:6379"}


def test_without_ray_address_a_local_cluster_of_num_cpus(monkeypatch):
    monkeypatch.delenv(ADDRESS_VARIABLE, raising=False)
    assert init_arguments(num_cpus=2) == {"address": "local", "num_cpus": 2, "include_dashboard": False}
