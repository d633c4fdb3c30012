"""The operator policy: what each repository may ask of runbot (issue 15).

The operator writes one YAML file (`RUNBOT_POLICY_FILE`); a repository's `.runbot.yml` is a
request inside its bounds. This room owns the file's model (`model`), reading it with line
numbers (`load`), the policy in force for one repository (`merge`), where each value comes from
(`explain`), the pure checks of a request (`checks`) and the policy a process holds (`store`).
Everything here is pure except `load` and `store`, which read the file.
"""
