"""Upload and schedule the compiled pipeline through the KFP v2beta1 API (``kfp.Client``).

Authentication comes from the environment only, and is never printed or written:

- ``KF_PIPELINES_TOKEN``: a bearer token (``Authorization: Bearer ...``), e.g. a
  service-account token for an in-cluster or port-forwarded API server;
- ``KF_PIPELINES_COOKIE``: the Kubeflow session cookie, e.g.
  ``authservice_session=...`` or ``oauth2_proxy_kubeflow=...`` copied from the browser,
  for a Kubeflow behind Dex/oauth2-proxy.

Every request has a deadline (``timeout``, 30 s by default, ``--api-timeout`` on the
command line). ``kfp.Client`` takes none and passes none on, and then a request to a
server that accepts the connection but never answers waits for ever.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import urllib.parse
from typing import Any, Callable, Dict, List, Mapping, Optional

TOKEN_ENV = "KF_PIPELINES_TOKEN"
COOKIE_ENV = "KF_PIPELINES_COOKIE"
DEFAULT_EXPERIMENT = "twotower-recommender"
DEFAULT_TIMEOUT_SECONDS = 30.0


class KFPUnreachable(ConnectionError):
    """A KFP API request got no answer: no connection, or none within the deadline."""


def client(host: str, namespace: Optional[str] = None,
           environ: Mapping[str, str] = os.environ,
           timeout: float = DEFAULT_TIMEOUT_SECONDS):
    """A ``kfp.Client`` for ``host`` with the token or cookie from ``environ``, whose
    every request gives up after ``timeout`` seconds without an answer."""
    if timeout <= 0:
        raise ValueError(f"KFP API timeout must be > 0 seconds, got {timeout}")
    token, cookie = environ.get(TOKEN_ENV) or None, environ.get(COOKIE_ENV) or None
    kwargs: Dict[str, Any] = {"host": host, "existing_token": token, "cookies": cookie}
    if namespace:
        kwargs["namespace"] = namespace
    return _timed_client_class()(request_timeout=timeout, **kwargs)


def _timed_client_class():
    """``kfp.Client`` with a :func:`timed_rest_client` under its generated APIs.

    They all share one ``ApiClient``, whose ``rest_client`` makes every request.
    ``kfp.Client.__init__`` creates it and may call ``get_kfp_healthz`` before it
    returns, so the swap happens there too.
    """
    import kfp

    class TimedClient(kfp.Client):
        def __init__(self, *args, request_timeout: float, **kwargs) -> None:
            self._request_timeout = request_timeout
            super().__init__(*args, **kwargs)
            self._use_deadlines()

        def get_kfp_healthz(self, *args, **kwargs):
            self._use_deadlines()
            return super().get_kfp_healthz(*args, **kwargs)

        def _use_deadlines(self) -> None:
            api_client = self._healthz_api.api_client
            if not getattr(api_client.rest_client, "timed", False):
                api_client.rest_client = timed_rest_client(api_client.configuration,
                                                           self._request_timeout)
    return TimedClient


def timed_rest_client(configuration, timeout: float):
    """A ``kfp_server_api`` REST client whose requests default to ``timeout`` seconds
    to connect and between bytes read, and raise :class:`KFPUnreachable` without an
    answer. The generated client takes an int alone as a timeout, and a float only
    in a (connect, read) pair, so the pair it is."""
    import urllib3
    from kfp_server_api import rest

    # A read that timed out is not retried (the server may still be at work on it);
    # refused or reset connections are, 3 times, with back-off.
    configuration = copy.copy(configuration)
    configuration.retries = urllib3.Retry(total=3, read=0, backoff_factor=0.2)

    class TimedRESTClient(rest.RESTClientObject):
        timed = True

        def request(self, method, url, *args, **kwargs):
            kwargs["_request_timeout"] = kwargs.get("_request_timeout") or (timeout, timeout)
            try:
                return super().request(method, url, *args, **kwargs)
            except urllib3.exceptions.HTTPError as e:
                reason = getattr(e, "reason", None) or e
                where = urllib.parse.urlsplit(url)._replace(query="").geturl()
                # (urllib3 derives "connection refused" from its connect-timeout error)
                if isinstance(reason, urllib3.exceptions.TimeoutError) and not isinstance(
                        reason, urllib3.exceptions.NewConnectionError):
                    raise KFPUnreachable(f"KFP API {method} {where}: no answer within "
                                         f"{timeout:g} s (--api-timeout)") from None
                raise KFPUnreachable(f"KFP API {method} {where}: cannot connect: "
                                     f"{reason}") from None
    return TimedRESTClient(configuration)


@dataclasses.dataclass(frozen=True)
class Uploaded:
    pipeline_id: str
    version_id: str
    version_name: str
    new_pipeline: bool


def upload(kfp_client, package_path: str, pipeline_name: str, version_name: str,
           description: str = "") -> Uploaded:
    """Uploads ``package_path`` as pipeline ``pipeline_name``, or as a new version
    ``version_name`` of it when a pipeline of that name exists."""
    pipeline_id = kfp_client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        p = kfp_client.upload_pipeline(package_path, pipeline_name=pipeline_name,
                                       description=description or None)
        versions = kfp_client.list_pipeline_versions(p.pipeline_id, page_size=1,
                                                     sort_by="created_at desc")
        v = (versions.pipeline_versions or [None])[0]
        return Uploaded(p.pipeline_id, v.pipeline_version_id if v else "",
                        v.display_name if v else pipeline_name, True)
    v = kfp_client.upload_pipeline_version(package_path, pipeline_version_name=version_name,
                                           pipeline_id=pipeline_id,
                                           description=description or None)
    return Uploaded(pipeline_id, v.pipeline_version_id, v.display_name, False)


def kfp_cron(expression: str) -> str:
    """KFP's six-field cron (seconds first); a five-field expression runs at second 0."""
    fields = expression.split()
    if len(fields) == 5:
        fields = ["0"] + fields
    if len(fields) != 6:
        raise ValueError(f"cron expression needs 5 or 6 fields, got {len(fields)}: "
                         f"{expression!r}")
    return " ".join(fields)


def parse_params(pairs: List[str], types: Mapping[str, Callable[[str], Any]]) -> Dict[str, Any]:
    """``["min_recall=0.1", ...]`` to ``{"min_recall": 0.1}``, typed as the spec declares."""
    params: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"parameter must look like key=value, got {pair!r}")
        if key not in types:
            raise ValueError(f"unknown pipeline parameter {key!r}; the spec has "
                             f"{', '.join(sorted(types))}")
        params[key] = types[key](value)
    return params


def experiment_id(kfp_client, name: str, namespace: Optional[str] = None) -> str:
    """The ID of experiment ``name``, created when missing."""
    try:
        return kfp_client.get_experiment(experiment_name=name,
                                         namespace=namespace).experiment_id
    except ValueError:  # kfp raises ValueError("No experiment is found with name ...")
        return kfp_client.create_experiment(name, namespace=namespace).experiment_id


def latest_version_id(kfp_client, pipeline_id: str) -> str:
    versions = kfp_client.list_pipeline_versions(pipeline_id, page_size=1,
                                                 sort_by="created_at desc")
    if not versions.pipeline_versions:
        raise ValueError(f"pipeline {pipeline_id} has no versions")
    return versions.pipeline_versions[0].pipeline_version_id


def schedule(kfp_client, pipeline_name: str, cron: str, experiment: str,
             params: Dict[str, Any], job_name: str = "", pipeline_root: str = "",
             namespace: Optional[str] = None, max_concurrency: int = 1):
    """Creates an enabled recurring run of the newest version of ``pipeline_name``."""
    pipeline_id = kfp_client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        raise ValueError(f"no pipeline named {pipeline_name!r}; run `pipeline.py upload` "
                         f"first")
    version_id = latest_version_id(kfp_client, pipeline_id)
    return kfp_client.create_recurring_run(
        experiment_id=experiment_id(kfp_client, experiment, namespace),
        job_name=job_name or f"{pipeline_name}-{re.sub(r'[^0-9a-z]+', '-', cron.lower())}",
        cron_expression=kfp_cron(cron), max_concurrency=max_concurrency, no_catchup=True,
        params=params, pipeline_id=pipeline_id, version_id=version_id,
        pipeline_root=pipeline_root or None, enabled=True)
