"""NDIF reachability, checked before anything loads so `--remote` fails at once (no hang).

Light on purpose: no torch, no nnsight import unless a user config file could hold the API key.
"""

from __future__ import annotations

import os
import threading

from workbench.errors import WorkbenchError

NETWORK_TIMEOUT_S = 3.0
DEFAULT_NDIF_HOST = "https://api.ndif.us"  # nnsight 0.8's shipped default


class RemoteUnavailableError(WorkbenchError):
    """--remote was asked for, but NDIF cannot be used from here (no API key, no network, not a hub model)."""


def ndif_preflight(timeout: float = NETWORK_TIMEOUT_S) -> str:
    """Check an NDIF API key is set and the NDIF host answers its status endpoint; return the host URL.

    Bounded to about 3 x `timeout` seconds (DNS included) so `--remote` fails at once instead of hanging. A
    plain TCP connect is not enough: proxies accept connections to anything, so NDIF must answer /status.
    """
    key, host = _ndif_settings()
    if not key:
        raise RemoteUnavailableError(
            "--remote runs on NDIF and needs an API key: set NDIF_API_KEY (sign up at https://login.ndif.us), "
            "or drop --remote to run locally")
    host = host.rstrip("/")
    outcome: dict = {}

    def probe():
        import httpx

        try:
            response = httpx.get(f"{host}/status", timeout=httpx.Timeout(timeout, read=2 * timeout))
            if response.status_code != 200:
                outcome["error"] = f"HTTP {response.status_code} from {host}/status, which is not NDIF's answer"
            else:
                response.json()
                outcome["ok"] = True
        except ValueError:
            outcome["error"] = f"{host}/status did not answer JSON"
        except Exception as error:  # httpx.HTTPError, OSError: any failure means no NDIF
            outcome["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(3 * timeout)
    if not outcome.get("ok"):
        reason = outcome.get("error") or f"no answer within {3 * timeout:.0f} s"
        raise RemoteUnavailableError(
            f"--remote cannot reach NDIF at {host} ({reason}); check the network (or NDIF_HOST), "
            "or drop --remote to run locally")
    return host


def _ndif_settings() -> tuple[str | None, str]:
    """(API key, host) as nnsight resolves them: environment, else nnsight's config (its user file, if any).

    nnsight is imported only when a user config file could hold the key (the import takes seconds), so a
    missing key is reported at once.
    """
    key, host = os.environ.get("NDIF_API_KEY"), os.environ.get("NDIF_HOST")
    user_file = os.environ.get("NNSIGHT_CONFIG") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME", "~/.config"), "nnsight", "config.yaml")
    if (key and host) or not os.path.exists(os.path.expanduser(user_file)):
        return key or None, host or DEFAULT_NDIF_HOST
    from nnsight import CONFIG

    return key or CONFIG.API.APIKEY, host or CONFIG.API.HOST
