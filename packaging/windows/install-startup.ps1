<#
.SYNOPSIS
  Starts aw-sync-samay at logon through a shortcut in the user's Startup folder (shell:startup),
  for when it is NOT run as an aw-qt module (pick one: with both, the second instance says
  "already running" and exits).

.DESCRIPTION
  Per user, no administrator rights. The shortcut starts the program minimized: it is a console
  program, so a minimized console window stays in the taskbar while it runs. aw-qt starts
  modules without a window; prefer that when you use aw-qt.
  Logs: %LOCALAPPDATA%\activitywatch\activitywatch\Logs\aw-sync-samay\

.PARAMETER Exe
  The installed aw-sync-samay.exe. Default: %LOCALAPPDATA%\Programs\aw-sync-samay\aw-sync-samay.exe

.PARAMETER Remove
  Delete the shortcut instead.

.EXAMPLE
  powershell -ExecutionPolicy Bypass -File install-startup.ps1
  powershell -ExecutionPolicy Bypass -File install-startup.ps1 -Remove
#>
param(
    [string]$Exe = (Join-Path $env:LOCALAPPDATA 'Programs\aw-sync-samay\aw-sync-samay.exe'),
    [switch]$Remove
)
$ErrorActionPreference = 'Stop'

$startup = [Environment]::GetFolderPath('Startup')
$link = Join-Path $startup 'aw-sync-samay.lnk'

if ($Remove) {
    if (Test-Path $link) {
        Remove-Item $link
        Write-Output "Removed $link"
    } else {
        Write-Output "No shortcut at $link"
    }
    exit 0
}

if (-not (Test-Path $Exe -PathType Leaf)) {
    Write-Error "$Exe does not exist: install aw-sync-samay.exe there, or pass -Exe PATH"
}

$shell = New-Object -ComObject WScript.Shell
$shortcut = $shell.CreateShortcut($link)
$shortcut.TargetPath = $Exe
$shortcut.WorkingDirectory = Split-Path $Exe
$shortcut.WindowStyle = 7  # minimized
$shortcut.Description = 'aw-sync-samay: sync ActivityWatch events to the upstream'
$shortcut.Save()
Write-Output "Created $link -> $Exe (starts at your next logon; run it now with: & '$Exe')"
