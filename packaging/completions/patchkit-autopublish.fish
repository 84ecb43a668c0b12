# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_patchkit_autopublish_global_optspecs
    string join \n h/help V/version
end

function __fish_patchkit_autopublish_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_patchkit_autopublish_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_patchkit_autopublish_using_subcommand
    set -l cmd (__fish_patchkit_autopublish_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_needs_command" -s h -l help -d 'Print help'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_needs_command" -s V -l version -d 'Print version'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_needs_command" -f -a "run" -d 'Run the daemon: watch the rule folders and publish every build'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_needs_command" -f -a "check" -d 'Validate the config file and read the API key; changes nothing'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_needs_command" -f -a "sandbox" -d 'Run a local PatchKit emulator (the sandbox) to try a config without a PatchKit account'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_needs_command" -f -a "demo" -d 'See it work: the sandbox, a watch folder and the real daemon publishing a sample build, with no PatchKit account and no config'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_needs_command" -f -a "status" -d 'Show the builds: id, rule, label, stage, progress, version, attempts and last error'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_needs_command" -f -a "retry" -d 'Start a failed build again, from a fresh upload (its draft version is reused)'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_needs_command" -f -a "cancel" -d 'Stop a build for good; its file is left where it is'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_needs_command" -f -a "completions" -d 'Print the completion script for a shell'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_needs_command" -f -a "man" -d 'Print the man page (roff) of the program or of one command'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_needs_command" -f -a "store" -d 'Look after the build store (the daemon must be stopped)'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand run" -s c -l config -d 'The config file' -r -F
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand run" -l once -d 'Take the builds already in the rule folders, finish every build, then exit (for cron jobs and CI steps) instead of watching'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand check" -s c -l config -d 'The config file' -r -F
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand check" -l unit -d 'The unit file to read for --as-service (and the drop-ins in FILE.d/ beside it), instead of the installed one' -r -F
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand check" -l credential -d 'Check this file as the service\'s credential patchkit-api-key, without reading a unit' -r -F
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand check" -l as-service -d 'Read the API key where the systemd service will: the credential patchkit-api-key named by LoadCredential= in the installed unit and its drop-ins. Run it as root, as systemd reads credentials as root'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l bind -d 'Address both listeners bind to' -r
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l main-port -d 'Port of the main API (0 picks a free one)' -r
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l upload-port -d 'Port of the chunk upload host (0 picks a free one)' -r
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l api-key -d 'The API key of the one account' -r
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l app -d 'An app secret owned by the key (repeatable)' -r
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l job-duration -d 'How long processing jobs take' -r
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l publish-duration -d 'How long publishing takes' -r
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l data-dir -d 'Where uploads are assembled (default: a temporary directory)' -r -F
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l seed -d 'Seed of the fault RNG' -r
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l fail-5xx -d 'Probability of a 500 or 503 answer' -r
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l drop -d 'Probability of a dropped connection (half before, half after the request is applied)' -r
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l chunk-412 -d 'Probability of a 412 answer to a good chunk' -r
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l latency -d 'Latency added to every API request' -r
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l variant -d 'Answer as PatchKit plausibly might where its documentation is silent (repeatable). `forgetful` takes effect on `POST /_sandbox/restart`' -r -f -a "swagger-keys\t'Responses carry only the keys of PatchKit\'s 2018 Swagger file: no `publish_time` (unless a publish is scheduled) and no `processing_progress` on versions, `processing_messages` null when there are none, and no `display_name`, `is_channel`, `allow_channel_direct_publish` or `parent_group` on apps'
lazy-timestamps\t'A processing job waits in a queue for half its duration before it starts; until then the version keeps the previous processing\'s `processing_started_at` and `processing_finished_at` (null for a first one). Only the app\'s `processing_version` shows the request'
content-file-404\t'Every refusal of `content_file` (incomplete or unknown upload, a job already running, a version that is not a draft) is a 404 with wording of its own'
forbidden-403\t'An unknown API key gets 403 instead of 401 on the version endpoints (`/1/apps/{secret}/versions...`), as the Swagger\'s "API key invalid or draft version already exists" allows'
no-global-lock\t'The server predates PatchKit\'s global lock: `POST /1/global_locks/acquire` is a 404, as an unknown route'
forgetful\t'[`SandboxHandle::restart`](super::SandboxHandle::restart) forgets every draft version, upload and job, as a restore from backup would; published and scheduled versions stay. Without this variant a restart keeps everything'"
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l channel-app -d 'A channel app owned by the key, as CHANNEL=GROUP (repeatable); the group app is created too. The channel takes no direct uploads' -r
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -l lock-timeout -d 'How long an owner of PatchKit\'s global lock keeps its place without asking again' -r
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand sandbox" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand demo" -l once -d 'Exit once the sample build is published (status 0) or failed (1)'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand demo" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand status" -s c -l config -d 'The config file' -r -F
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand status" -l state-dir -d 'The state directory to read, instead of the config\'s state_dir. Without it, a config that does not load still gives its state_dir' -r -F
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand status" -l json -d 'Print JSON (one array of builds) instead of a table'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand status" -l all -d 'Show every build the store holds, not just recent ones'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand retry" -s c -l config -d 'The config file' -r -F
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand retry" -l state-dir -d 'The state directory to use, instead of the config\'s state_dir. Without it, a config that does not load still gives its state_dir' -r -F
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand retry" -l force -d 'Retry it even though a build of its app that arrived later is live: the older build becomes the live one'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand retry" -s h -l help -d 'Print help'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand cancel" -s c -l config -d 'The config file' -r -F
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand cancel" -l state-dir -d 'The state directory to use, instead of the config\'s state_dir. Without it, a config that does not load still gives its state_dir' -r -F
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand cancel" -s h -l help -d 'Print help'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand man" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand store; and not __fish_seen_subcommand_from recover help" -s h -l help -d 'Print help'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand store; and not __fish_seen_subcommand_from recover help" -f -a "recover" -d 'Make a store that was refused as damaged usable again, without publishing anything twice'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand store; and not __fish_seen_subcommand_from recover help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand store; and __fish_seen_subcommand_from recover" -s c -l config -d 'The config file' -r -F
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand store; and __fish_seen_subcommand_from recover" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand store; and __fish_seen_subcommand_from help" -f -a "recover" -d 'Make a store that was refused as damaged usable again, without publishing anything twice'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand store; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand help; and not __fish_seen_subcommand_from run check sandbox demo status retry cancel completions man store help" -f -a "run" -d 'Run the daemon: watch the rule folders and publish every build'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand help; and not __fish_seen_subcommand_from run check sandbox demo status retry cancel completions man store help" -f -a "check" -d 'Validate the config file and read the API key; changes nothing'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand help; and not __fish_seen_subcommand_from run check sandbox demo status retry cancel completions man store help" -f -a "sandbox" -d 'Run a local PatchKit emulator (the sandbox) to try a config without a PatchKit account'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand help; and not __fish_seen_subcommand_from run check sandbox demo status retry cancel completions man store help" -f -a "demo" -d 'See it work: the sandbox, a watch folder and the real daemon publishing a sample build, with no PatchKit account and no config'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand help; and not __fish_seen_subcommand_from run check sandbox demo status retry cancel completions man store help" -f -a "status" -d 'Show the builds: id, rule, label, stage, progress, version, attempts and last error'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand help; and not __fish_seen_subcommand_from run check sandbox demo status retry cancel completions man store help" -f -a "retry" -d 'Start a failed build again, from a fresh upload (its draft version is reused)'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand help; and not __fish_seen_subcommand_from run check sandbox demo status retry cancel completions man store help" -f -a "cancel" -d 'Stop a build for good; its file is left where it is'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand help; and not __fish_seen_subcommand_from run check sandbox demo status retry cancel completions man store help" -f -a "completions" -d 'Print the completion script for a shell'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand help; and not __fish_seen_subcommand_from run check sandbox demo status retry cancel completions man store help" -f -a "man" -d 'Print the man page (roff) of the program or of one command'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand help; and not __fish_seen_subcommand_from run check sandbox demo status retry cancel completions man store help" -f -a "store" -d 'Look after the build store (the daemon must be stopped)'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand help; and not __fish_seen_subcommand_from run check sandbox demo status retry cancel completions man store help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c patchkit-autopublish -n "__fish_patchkit_autopublish_using_subcommand help; and __fish_seen_subcommand_from store" -f -a "recover" -d 'Make a store that was refused as damaged usable again, without publishing anything twice'
