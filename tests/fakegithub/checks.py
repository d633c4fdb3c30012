"""Check runs, check suites and combined statuses: bodies, handlers and readers.

The App's own check suite is rolled up from its check runs, as GitHub does.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from .ids import _fake_sha, _ids, _node_id, _now
from .state import _SHA_RE, _CheckRun, _Ctx, _GitHubError, _rebase, _Repo, _Resp


class Checks:
    """FakeGitHub's checks and statuses (a mixin; ``server.py`` makes the state)."""

    def check_runs(self, repo: str, sha: str | None = None) -> list[dict[str, Any]]:
        """The App's check runs on ``repo`` (on ``sha``), oldest first, as GitHub shows them."""
        with self._lock:
            return [
                self._check_run_obj(run)
                for run in sorted(self._check_runs.values(), key=lambda r: r.id)
                if run.repo == self._repo(repo).full_name and sha in (None, run.sha)
            ]

    def _check_run_obj(self, run: _CheckRun) -> dict[str, Any]:
        api = f"{self.url}/repos/{run.repo}"
        body = self._tpl("check_run")
        body.update(
            id=run.id,
            head_sha=run.sha,
            node_id=_node_id("CheckRun", run.id),
            external_id="",
            url=f"{api}/check-runs/{run.id}",
            html_url=f"{self.web_url}/{run.repo}/runs/{run.id}",
            details_url=run.details_url,
            status=run.status,
            conclusion=run.conclusion,
            started_at=run.started_at,
            completed_at=run.completed_at,
            output={
                "title": run.title,
                "summary": run.summary,
                "text": None,
                "annotations_count": 0,
                "annotations_url": f"{api}/check-runs/{run.id}/annotations",
            },
            name=run.name,
            check_suite={"id": run.suite_id},
            app=self._app_obj(),
            pull_requests=[],
        )
        return body

    def _suite_id(self, repo: str, sha: str) -> int:
        """The App's own check suite on a commit: GitHub groups its check runs there."""
        return int(_fake_sha(repo, sha, "app", self.app_id)[:8], 16)

    @staticmethod
    def _check_state(run: _CheckRun, body: Mapping[str, Any]) -> None:
        if "status" in body:
            run.status = body["status"]
        if body.get("conclusion"):
            run.conclusion, run.status = body["conclusion"], "completed"
        if run.status == "completed" and not run.conclusion:
            raise _GitHubError(422, "Invalid request.\n\nconclusion is required when completed.")
        if run.status != "completed":
            run.conclusion = None
        output = body.get("output")
        if isinstance(output, Mapping):
            run.title = str(output.get("title", run.title))
            run.summary = str(output.get("summary", run.summary))
        if "details_url" in body:
            run.details_url = body["details_url"]
        run.completed_at = _now() if run.status == "completed" else None

    def _h_create_check_run(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        body = ctx.body
        sha = body["head_sha"]
        if self._resolve_ref(repo, sha) is None and not _SHA_RE.fullmatch(sha):
            raise _GitHubError(422, "No commit found for SHA: " + sha)
        run = _CheckRun(
            id=next(_ids),
            repo=repo.full_name,
            sha=sha,
            name=body["name"],
            status="queued",
            conclusion=None,
            title="",
            summary="",
            details_url=None,
            suite_id=self._suite_id(repo.full_name, sha),
            started_at=_now(),
        )
        self._check_state(run, body)
        self._check_runs[run.id] = run
        return _Resp(201, self._check_run_obj(run))

    def _h_update_check_run(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        run = self._check_runs.get(self._int_param(ctx, "check_run_id"))
        if run is None or run.repo != repo.full_name:
            raise _GitHubError(404, "Not Found")
        self._check_state(run, ctx.body)
        return _Resp(200, self._check_run_obj(run))

    def _h_list_check_runs(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        sha = self._commit_sha(repo, ctx.params["ref"])
        runs = [r for r in self._check_runs.values() if r.repo == repo.full_name and r.sha == sha]
        if "check_name" in ctx.query:
            runs = [r for r in runs if r.name == ctx.query["check_name"]]
        runs.sort(key=lambda r: r.id, reverse=True)
        page, headers = self._paginate(ctx, runs)
        body = {"total_count": len(runs), "check_runs": [self._check_run_obj(r) for r in page]}
        return _Resp(200, body, headers)

    def _app_suite(self, repo: _Repo, sha: str) -> dict[str, Any] | None:
        """The App's check suite on ``sha``, its state rolled up from its check runs."""
        runs = [r for r in self._check_runs.values() if r.repo == repo.full_name and r.sha == sha]
        if not runs:
            return None
        latest: dict[str, _CheckRun] = {}
        for run in sorted(runs, key=lambda r: r.id):
            latest[run.name] = run
        states = [r.status for r in latest.values()]
        conclusions = {r.conclusion for r in latest.values()}
        if "in_progress" in states:
            status, conclusion = "in_progress", None
        elif "queued" in states:
            status, conclusion = "queued", None
        else:
            status = "completed"
            conclusion = next(
                (c for c in ("failure", "cancelled", "success") if c in conclusions), "neutral"
            )
        ident = self._suite_id(repo.full_name, sha)
        return {"id": ident, "status": status, "conclusion": conclusion, "count": len(latest)}

    def _commit_sha(self, repo: _Repo, ref: str) -> str:
        resolved = self._resolve_ref(repo, ref)
        if resolved is None:
            raise _GitHubError(422, f"No commit found for SHA: {ref}")
        return resolved[0]

    def _h_check_suites(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        sha = self._commit_sha(repo, ctx.params["ref"])
        api = f"{self.url}/repos/{repo.full_name}"
        suites = []
        rows: list[tuple[str, str | None, int | None, int]] = [
            (status, conclusion, None, 1) for status, conclusion in repo.check_suites.get(sha, [])
        ]
        own = self._app_suite(repo, sha)
        if own is not None:
            rows.append((own["status"], own["conclusion"], own["id"], own["count"]))
        for index, (status, conclusion, own_id, count) in enumerate(rows):
            ident = own_id or int(_fake_sha(repo.full_name, sha, index)[:8], 16)
            # The suite's app is a third-party CI app from the example; keep it, but
            # point its URLs at the fake. runbot's own suite is the App's.
            suite = _rebase(
                self._tpl("check_suite"),
                [("https://api.github.com", self.url), ("https://github.com", self.web_url)],
            )
            head_commit = suite.get("head_commit") or {}
            head_commit.update(id=sha, tree_id=_fake_sha("tree", sha))
            suite.update(
                id=ident,
                node_id=_node_id("CheckSuite", ident),
                head_branch=None,
                head_sha=sha,
                status=status,
                conclusion=conclusion,
                url=f"{api}/check-suites/{ident}",
                before=None,
                after=sha,
                pull_requests=[],
                repository=self._repo_obj(repo),
                check_runs_url=f"{api}/check-suites/{ident}/check-runs",
                head_commit=head_commit,
                latest_check_runs_count=count,
            )
            if own_id is not None:
                suite["app"] = self._app_obj()
            suites.append(suite)
        if "app_id" in ctx.query:
            suites = [
                s for s in suites if str((s.get("app") or {}).get("id")) == ctx.query["app_id"]
            ]
        page, headers = self._paginate(ctx, suites)
        return _Resp(200, {"total_count": len(suites), "check_suites": page}, headers)

    def _h_combined_status(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        ref = ctx.params["ref"]
        resolved = self._resolve_ref(repo, ref)
        if resolved is None:
            raise _GitHubError(404, f"No commit found for SHA: {ref}")
        sha = resolved[0]
        api = f"{self.url}/repos/{repo.full_name}"
        state, contexts = repo.statuses.get(sha, ("pending", {}))
        body = self._tpl("combined")
        statuses = []
        for context, ctx_state in contexts.items():
            ident = int(_fake_sha(repo.full_name, sha, context)[:8], 16)
            item = copy.deepcopy(self._templates["combined"]["statuses"][0])
            item.update(
                url=f"{api}/statuses/{sha}",
                id=ident,
                node_id=_node_id("StatusContext", ident),
                state=ctx_state,
                description=f"{context} is {ctx_state}",
                target_url=None,
                context=context,
                avatar_url=None,
                created_at=_now(),
                updated_at=_now(),
            )
            statuses.append(item)
        body.update(
            state=state,
            statuses=statuses,
            sha=sha,
            total_count=len(statuses),
            repository=self._repo_obj(repo),
            commit_url=f"{api}/commits/{sha}",
            url=f"{api}/commits/{sha}/status",
        )
        return _Resp(200, body)
