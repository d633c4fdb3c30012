"""Deployments and deployment statuses: bodies, handlers and readers.

Enforces GitHub's rules (required contexts, auto-inactive, which deployments
may be deleted) so the code under test meets them here first.
"""

from __future__ import annotations

import copy
from typing import Any

from .ids import _ids, _node_id, _now
from .state import _Ctx, _Deployment, _DeploymentStatus, _GitHubError, _Repo, _Resp


class Deployments:
    """FakeGitHub's deployments (a mixin; ``server.py`` makes the state)."""

    def deployments(self, repo: str) -> list[dict[str, Any]]:
        """Deployments of *repo*, oldest first (the API lists newest first)."""
        with self._lock:
            r = self._repo(repo)
            return [
                self._deployment_obj(d)
                for d in sorted(self._deployments.values(), key=lambda d: d.id)
                if d.repo == r.full_name
            ]

    def deployment_statuses(self, repo: str, deployment_id: int) -> list[dict[str, Any]]:
        """Statuses of a deployment, oldest first (the API lists newest first)."""
        with self._lock:
            dep = self._deployments[deployment_id]
            if dep.repo.lower() != repo.lower():
                raise KeyError(f"deployment {deployment_id} is not in {repo}")
            return [self._deployment_status_obj(dep, s) for s in dep.statuses]

    def _deployment_obj(self, dep: _Deployment) -> dict[str, Any]:
        api = f"{self.url}/repos/{dep.repo}"
        body = self._tpl("deployment")
        body.update(
            url=f"{api}/deployments/{dep.id}",
            id=dep.id,
            node_id=_node_id("Deployment", dep.id),
            sha=dep.sha,
            ref=dep.ref,
            task=dep.task,
            payload=copy.deepcopy(dep.payload),
            original_environment=dep.original_environment,
            environment=dep.environment,
            description=dep.description,
            creator=self._user_obj(dep.creator),
            created_at=dep.created_at,
            updated_at=dep.updated_at,
            statuses_url=f"{api}/deployments/{dep.id}/statuses",
            repository_url=api,
            transient_environment=dep.transient,
            production_environment=dep.production,
            performed_via_github_app=self._app_obj() if dep.via_app else None,
        )
        return body

    def _deployment_status_obj(self, dep: _Deployment, st: _DeploymentStatus) -> dict[str, Any]:
        api = f"{self.url}/repos/{dep.repo}"
        body = self._tpl("deployment_status")
        body.update(
            url=f"{api}/deployments/{dep.id}/statuses/{st.id}",
            id=st.id,
            node_id=_node_id("DeploymentStatus", st.id),
            state=st.state,
            creator=self._user_obj(st.creator),
            description=st.description,
            environment=st.environment,
            target_url=st.target_url,
            created_at=st.created_at,
            updated_at=st.created_at,
            deployment_url=f"{api}/deployments/{dep.id}",
            repository_url=api,
            environment_url=st.environment_url,
            log_url=st.log_url,
            performed_via_github_app=self._app_obj() if st.via_app else None,
        )
        return body

    def _h_list_deployments(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        deps = [d for d in self._deployments.values() if d.repo == repo.full_name]
        for name in ("sha", "ref", "task", "environment"):
            if name in ctx.query:
                deps = [d for d in deps if getattr(d, name) == ctx.query[name]]
        deps.sort(key=lambda d: d.id, reverse=True)
        page, headers = self._paginate(ctx, deps)
        return _Resp(200, [self._deployment_obj(d) for d in page], headers)

    def _failing_contexts(
        self, repo: _Repo, sha: str, required: list[str] | None
    ) -> list[dict[str, str]]:
        """Contexts that block a deployment, the way ``required_contexts`` is enforced."""
        contexts: dict[str, str] = {}
        if sha in repo.statuses:
            contexts.update(repo.statuses[sha][1])
        for index, (status, conclusion) in enumerate(repo.check_suites.get(sha, [])):
            ok = status == "completed" and conclusion in ("success", "neutral", "skipped")
            contexts[f"check-suite-{index + 1}"] = (
                "success" if ok else ("pending" if status != "completed" else "failure")
            )
        names = list(contexts) if required is None else required
        return [
            {"context": name, "state": contexts.get(name, "missing")}
            for name in names
            if contexts.get(name) != "success"
        ]

    def _h_create_deployment(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        body = ctx.body
        ref = body["ref"]
        resolved = self._resolve_ref(repo, ref)
        if resolved is None:
            raise _GitHubError(422, f"No ref found for: {ref}")
        sha = resolved[0]
        failing = self._failing_contexts(repo, sha, body.get("required_contexts"))
        if failing:
            raise _GitHubError(
                409,
                f"Conflict: Commit status checks failed for {ref}.",
                errors=[
                    {
                        "contexts": failing,
                        "resource": "Deployment",
                        "field": "required_contexts",
                        "code": "invalid",
                    }
                ],
            )
        environment = body.get("environment", "production")
        creator, via_app = self._actor(ctx.auth)
        now = _now()
        dep = _Deployment(
            id=next(_ids),
            repo=repo.full_name,
            sha=sha,
            ref=ref,
            task=body.get("task", "deploy"),
            payload=body.get("payload", {}),
            environment=environment,
            original_environment=environment,
            description=body.get("description"),
            creator=creator,
            via_app=via_app,
            transient=bool(body.get("transient_environment", False)),
            production=bool(body.get("production_environment", environment == "production")),
            created_at=now,
            updated_at=now,
        )
        self._deployments[dep.id] = dep
        out = self._deployment_obj(dep)
        return _Resp(201, out, {"location": out["url"]})

    def _deployment_in(self, ctx: _Ctx) -> _Deployment:
        repo = self._ctx_repo(ctx)
        dep = self._deployments.get(self._int_param(ctx, "deployment_id"))
        if dep is None or dep.repo != repo.full_name:
            raise _GitHubError(404, "Not Found")
        return dep

    def _h_list_deployment_statuses(self, ctx: _Ctx) -> _Resp:
        dep = self._deployment_in(ctx)
        statuses = list(reversed(dep.statuses))
        page, headers = self._paginate(ctx, statuses)
        return _Resp(200, [self._deployment_status_obj(dep, s) for s in page], headers)

    def _h_create_deployment_status(self, ctx: _Ctx) -> _Resp:
        dep = self._deployment_in(ctx)
        body = ctx.body
        creator, via_app = self._actor(ctx.auth)
        now = _now()
        if body.get("environment"):
            dep.environment = body["environment"]
        target_url = body.get("target_url", "")
        status = _DeploymentStatus(
            id=next(_ids),
            state=body["state"],
            creator=creator,
            via_app=via_app,
            description=body.get("description", ""),
            environment=dep.environment,
            target_url=target_url,
            log_url=body.get("log_url", target_url),
            environment_url=body.get("environment_url", ""),
            created_at=now,
        )
        dep.statuses.append(status)
        dep.updated_at = now
        if status.state == "success" and body.get("auto_inactive", True):
            # GitHub: prior non-transient, non-production deployments of the same
            # environment whose latest state is success get an "inactive" status.
            for other in self._deployments.values():
                if (
                    other.id < dep.id
                    and other.repo == dep.repo
                    and other.environment == dep.environment
                    and not other.transient
                    and not other.production
                    and other.statuses
                    and other.statuses[-1].state == "success"
                ):
                    other.statuses.append(
                        _DeploymentStatus(
                            next(_ids),
                            "inactive",
                            creator,
                            via_app,
                            "",
                            other.environment,
                            "",
                            "",
                            "",
                            now,
                        )
                    )
                    other.updated_at = now
        out = self._deployment_status_obj(dep, status)
        return _Resp(201, out, {"location": out["url"]})

    def _h_delete_deployment(self, ctx: _Ctx) -> _Resp:
        """GitHub deletes only inactive deployments, or the only one of its environment."""
        dep = self._deployment_in(ctx)
        active = not dep.statuses or dep.statuses[-1].state != "inactive"
        siblings = [
            d
            for d in self._deployments.values()
            if d.repo == dep.repo and d.environment == dep.environment and d.id != dep.id
        ]
        if active and siblings:
            raise _GitHubError(
                422,
                "We cannot delete an active deployment unless it is the only deployment in a"
                " given environment.",
            )
        del self._deployments[dep.id]
        return _Resp(204)

    def _h_delete_environment(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        self.deleted_environments.append((repo.full_name, ctx.params["environment_name"]))
        return _Resp(204)
