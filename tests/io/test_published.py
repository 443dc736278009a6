"""Published weights by name: pulled only when asked, from a local HTTP server or file:// here
(never the internet), kept only when size and sha256 are the published ones; added from a local
copy after the same check; checked again before every load."""

from __future__ import annotations

import http.server
import threading
from dataclasses import replace

import pytest
import torch

from upres.cli import main
from upres.errors import WeightsError
from upres.io import published
from upres.io.loading import load_model


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(published_file):
    """An HTTP server on 127.0.0.1 serving the folder of the tiny file; its base address."""
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: _Quiet(*a, directory=str(published_file.parent), **k))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_nothing_is_installed_or_downloaded_until_asked(published_entry):
    assert published.installed_path("tiny-x4") is None
    with pytest.raises(WeightsError, match=r"tiny-x4 is not installed: run `upres models pull tiny-x4`"):
        load_model("tiny-x4")
    assert not published.folder().exists()


def test_pull_over_http_checks_and_installs_then_the_name_loads(published_entry, server,
                                                                published_file):
    path = published.pull("tiny-x4", progress=False, urls=(f"{server}/tiny.pth",))
    assert path.read_bytes() == published_file.read_bytes()
    assert published.installed_path("tiny-x4") == path
    model = load_model("tiny-x4")
    reference = torch.load(published_file, weights_only=True)["params_ema"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())


def test_a_first_address_that_fails_falls_to_the_next(published_entry, server):
    path = published.pull("tiny-x4", progress=False,
                          urls=(f"{server}/missing.pth", f"{server}/tiny.pth"))
    assert path.is_file()


def test_a_file_with_other_bytes_is_a_named_error_and_nothing_is_kept(published_entry, server,
                                                                      published_file,
                                                                      monkeypatch):
    monkeypatch.setitem(published.PUBLISHED, "tiny-x4", replace(published_entry, sha256="0" * 64))
    with pytest.raises(WeightsError, match=r"tiny.pth: sha256 [0-9a-f]{64} is not the published "
                                           r"0{64} of tiny-x4; nothing was kept"):
        published.pull("tiny-x4", progress=False, urls=(f"{server}/tiny.pth",))
    assert not any(published.folder().iterdir())  # no file, no temporary


@pytest.mark.parametrize("size_change", [-1, +1])
def test_a_file_of_another_size_is_refused_without_reading_it_all(published_entry, server,
                                                                   monkeypatch,
                                                                   size_change):
    changed = replace(published_entry, size=published_entry.size + size_change)
    monkeypatch.setitem(published.PUBLISHED, "tiny-x4", changed)
    with pytest.raises(WeightsError, match=r"bytes, not the \d+ published for tiny-x4; nothing was kept"):
        published.pull("tiny-x4", progress=False, urls=(f"{server}/tiny.pth",))
    assert not any(published.folder().iterdir())


def test_no_address_answering_names_each_and_the_offline_way(published_entry, tmp_path):
    with pytest.raises(WeightsError, match=r"no address answered .*nowhere.pth.*models add FILE"):
        published.pull("tiny-x4", progress=False, urls=((tmp_path / "nowhere.pth").as_uri(),))


def test_add_installs_a_local_copy_by_its_sha256(published_entry, published_file, tmp_path):
    assert published.add(published_file) == "tiny-x4"
    assert published.installed_path("tiny-x4").read_bytes() == published_file.read_bytes()
    other = tmp_path / "other.pth"
    other.write_bytes(published_file.read_bytes() + b"x")
    with pytest.raises(WeightsError, match=r"other.pth: sha256 .* matches no published model"):
        published.add(other)
    with pytest.raises(WeightsError, match=r"other.pth: sha256 .* is not the published .* of tiny-x4"):
        published.add(other, "tiny-x4")


def test_an_installed_file_edited_later_is_not_used(published_entry, published_file, caplog):
    path = published.pull("tiny-x4", progress=False)
    path.write_bytes(path.read_bytes()[:-10])
    assert published.installed_path("tiny-x4") is None
    assert "is not the published tiny-x4" in caplog.text
    with pytest.raises(WeightsError, match="not installed"):
        load_model("tiny-x4")


def test_the_models_command_lists_pulls_and_adds(published_entry, published_file, capsys):
    assert main(["models"]) == 0
    assert "tiny-x4" in capsys.readouterr().out.split("published")[1].split("presets")[0]
    assert main(["models", "pull", "nonesuch"]) == 2
    assert "'nonesuch' is not a published model" in capsys.readouterr().err
    assert main(["models", "add", str(published_file), "--quiet"]) == 0
    assert "installed tiny-x4" in capsys.readouterr().out
    assert main(["models", "pull", "tiny-x4", "--quiet"]) == 0  # installed already: nothing fetched
    out = capsys.readouterr().out
    assert str(published.folder() / "tiny-x4.pth") in out
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert "tiny-x4" in listed and "installed" in listed.split("tiny-x4")[1].splitlines()[0]


def test_every_registry_entry_is_complete():
    for name, entry in published.PUBLISHED.items():
        assert entry.name == name and entry.urls and all(u.startswith("https://") for u in entry.urls)
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
        assert entry.size > 0 and entry.params > 0 and entry.license and entry.purpose in ("PSNR", "looks")


def test_an_experiment_arm_starting_from_a_published_name_is_checked_before_training(
        published_entry, published_file):
    from upres.errors import ConfigError
    from upres.io.pretrained import pretrained_available
    from upres.training.config import load_config
    from upres.training.experiment import check_arms

    arms = {"published": load_config(None, ["init.source=tiny-x4"])}
    if pretrained_available("realesrgan-x4plus"):  # an installed pretrained name passes
        arms["pretrained"] = load_config(None, ["init.source=realesrgan-x4plus"])
    with pytest.raises(ConfigError, match=r"arm published: init.source tiny-x4 is not installed "
                                          r"\(upres models pull tiny-x4\)") as caught:
        check_arms(arms)
    assert "arm pretrained" not in str(caught.value)
    published.add(published_file)
    check_arms(arms)


def test_a_model_published_on_google_drive_says_where_to_get_it_and_is_added_by_its_sha256(
        published_entry, published_file, monkeypatch, capsys):
    """Google Drive serves large files to a browser only: pull fetches nothing and says the one
    step that works; ``models add`` then installs a copy with the published bytes."""
    drive = replace(published_entry, urls=("https://drive.google.com/file/d/abc",))
    monkeypatch.setitem(published.PUBLISHED, "tiny-x4", drive)

    def no_network(*args, **kwargs):
        raise AssertionError("pull reached the network")

    monkeypatch.setattr(published.urllib.request, "urlopen", no_network)
    with pytest.raises(WeightsError) as err:
        published.pull("tiny-x4", progress=False)
    assert ("tiny-x4 is published on Google Drive, which does not serve it to a script: download "
            "https://drive.google.com/file/d/abc in a browser (0 MB), then run `upres models add "
            "FILE`") in str(err.value)
    assert not published.folder().exists()
    with pytest.raises(WeightsError, match=r"tiny-x4 is not installed: download https://drive"):
        load_model("tiny-x4")
    assert main(["models"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "tiny-x4" in x)
    assert "not installed: download https://drive.google.com/file/d/abc in a browser" in line
    assert published.add(published_file) == "tiny-x4"
    assert published.installed_path("tiny-x4") is not None


def test_the_large_psnr_models_are_registered_with_what_they_need(monkeypatch):
    """The large published PSNR models: a family upres builds, the parameter count of that
    family's preset, and the address users are sent to."""
    from upres.errors import ArchitectureError
    from upres.models.registry import build_model, hyperparameters

    presets = {"rrdb-psnr-x4": "rrdbnet-x4plus", "dat-x4": "dat", "hat-l-x4": "hat-l",
               "drct-l-x4": "drct-l"}
    for name, preset in presets.items():
        entry = published.PUBLISHED[name]
        assert entry.purpose == "PSNR" and published.needs_browser(entry)
        hparams = hyperparameters(entry.family, 4, preset)
        try:
            with torch.device("meta"):
                model = build_model(entry.family, hparams)
        except ArchitectureError:  # DAT computes at build time
            model = build_model(entry.family, hparams)
        assert sum(p.numel() for p in model.parameters()) == entry.params, name


def test_the_large_psnr_models_on_github_releases_are_pulled_not_sent_to_a_browser():
    """RealESRNet (Real-ESRGAN's L1-trained first stage, which knows JPEG and noise) and SwinIR's
    classical x4 live on GitHub releases: `pull` fetches them; each builds in its family's
    preset with the parameter count the entry records."""
    from upres.models.registry import build_model, hyperparameters

    for name, preset in {"realesrnet-x4plus": "rrdbnet-x4plus", "swinir-classical-x4": "swinir-m"}.items():
        entry = published.PUBLISHED[name]
        assert entry.purpose == "PSNR" and not published.needs_browser(entry)
        assert all(url.startswith("https://github.com/") and "/releases/download/" in url
                   for url in entry.urls)
        assert published.how_to_get(name) == f"upres models pull {name}"
        model = build_model(entry.family, hyperparameters(entry.family, 4, preset))
        assert sum(p.numel() for p in model.parameters()) == entry.params, name


def test_a_file_of_the_swinir_release_layout_loads_as_the_classical_preset(tmp_path):
    """SwinIR's release files hold ``{"params": state dict}`` of the classical x4 network: a file
    of that layout (random weights) loads strictly as SwinIR with the ``swinir-m`` preset's
    hyperparameters and gives the network's own output."""
    from upres.models.registry import build_model, hyperparameters

    pytest.importorskip("spandrel")
    torch.manual_seed(0)
    net = build_model("SwinIR", hyperparameters("SwinIR", 4, "swinir-m")).eval()
    torch.save({"params": net.state_dict()}, tmp_path / "001_classicalSR_x4.pth")
    again = load_model(tmp_path / "001_classicalSR_x4.pth").eval()
    assert type(again) is type(net)
    assert sum(p.numel() for p in again.parameters()) == published.PUBLISHED["swinir-classical-x4"].params
    probe = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(probe), net(probe))
